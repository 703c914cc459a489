//! The example's OpenAPI document, as the service (a child process) serves it at
//! `/openapi.json`: valid OpenAPI 3.1 by a real validator (`openapi-spec-validator`,
//! which `scripts/services.sh` installs), `POST /payments` carrying the
//! `Idempotency-Key` parameter and every answer of the layer's contract there, and
//! `GET /payments/{id}`, whose method does not take part, carrying none of it.

use std::path::{Path, PathBuf};
use std::process::Command;

use idem_tests::{ServiceProcess, test_db};
use serde_json::Value;

const PAYMENTS: &str = env!("CARGO_BIN_EXE_payments");

/// The validator's verdict on the document at `path`: its exit status and what it said.
fn validate(path: &Path) -> (bool, String) {
    let output = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(path)
        .output()
        .expect("python3 runs");
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("No module named"),
        "openapi-spec-validator is not installed (pip install openapi-spec-validator; \
         scripts/services.sh installs it)"
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

/// `document` written to a file of its own under the system's temporary directory.
fn written(document: &Value, name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{name}-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_vec_pretty(document).expect("json")).expect("write");
    path
}

/// The idem problem `type` URNs a response lists for its problem+json content (beside
/// the route's own problem, when it has one).
fn problem_types(response: &Value) -> Vec<String> {
    fn walk(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::String(s) if s.starts_with("urn:idem:problem:") => found.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
            Value::Object(map) => map.values().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(
        &response["content"]["application/problem+json"]["schema"],
        &mut found,
    );
    found
}

/// The layer's part of a problem+json schema: the `allOf` that refers to its schema.
fn layer_schema(response: &Value) -> &Value {
    let schema = &response["content"]["application/problem+json"]["schema"];
    match schema["oneOf"].as_array() {
        Some(either) => either
            .iter()
            .find(|s| s["allOf"].is_array())
            .unwrap_or(schema),
        None => schema,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_valid_openapi_and_says_what_the_layer_adds_to_each_route() {
    let db = test_db().await;
    // With a rate of new keys, so that its 429 is documented too.
    let service = ServiceProcess::start(PAYMENTS, &db.url, &[("NEW_KEY_RATE", "1000")]).await;
    let document: Value = reqwest::get(service.url("/openapi.json"))
        .await
        .expect("served")
        .json()
        .await
        .expect("json");
    assert_eq!(document["openapi"], "3.1.0");

    let path = written(&document, "payments-openapi");
    let (valid, said) = validate(&path);
    assert!(valid, "the validator refused the document: {said}");
    // The validator does refuse what is not OpenAPI: a parameter in no location.
    let mut broken = document.clone();
    broken["paths"]["/payments"]["post"]["parameters"][0]["in"] = "nowhere".into();
    let _ = std::fs::remove_file(&path);
    let (valid, _) = validate(&written(&broken, "payments-openapi-broken"));
    assert!(!valid, "a broken document passes the validator");

    let post = &document["paths"]["/payments"]["post"];
    let key = post["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == "idempotency-key")
        .expect("POST /payments takes an Idempotency-Key");
    assert_eq!(key["in"], "header");
    assert_eq!(key["required"], true, "a critical route requires its key");
    assert_eq!(key["schema"]["maxLength"], 257, "a quoted 255-byte key");
    assert_eq!(
        key["schema"]["pattern"],
        "^(?:[!-~]{1,255}|\"[!-~]{1,255}\")$"
    );
    assert_eq!(key["schema"]["minLength"], 1);
    assert!(
        post["responses"]["201"]["headers"]["Idempotent-Replayed"].is_object(),
        "the route's own answer may be a replay: {}",
        post["responses"]["201"]
    );
    for (status, slug) in [
        ("400", "key-missing"),
        ("400", "key-invalid"),
        ("409", "in-flight"),
        ("410", "key-expired"),
        ("410", "response-not-stored"),
        ("413", "body-too-large"),
        ("422", "key-mismatch"),
        ("429", "new-key-rate"),
        ("503", "store-unavailable"),
        ("503", "commit-failed"),
        ("507", "key-quota"),
    ] {
        let response = &post["responses"][status];
        let types = problem_types(response);
        assert!(
            types.contains(&format!("urn:idem:problem:{slug}")),
            "POST /payments {status} lists {slug}: {response}"
        );
        assert_eq!(
            layer_schema(response)["allOf"][0]["$ref"],
            "#/components/schemas/IdempotencyProblem",
            "{status}"
        );
    }
    for status in ["409", "429", "503"] {
        assert!(
            post["responses"][status]["headers"]["Retry-After"].is_object(),
            "{status} says when to retry"
        );
    }
    // The route's own 400 keeps its own problem beside the layer's.
    let own = &post["responses"]["400"]["content"]["application/problem+json"]["schema"];
    assert!(own["oneOf"].is_array(), "both 400 problems: {own}");
    assert!(document["components"]["schemas"]["IdempotencyProblem"].is_object());

    let get = &document["paths"]["/payments/{id}"]["get"];
    let names: Vec<&str> = get["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        !names.contains(&"idempotency-key"),
        "GET takes no key: {names:?}"
    );
    let responses = get["responses"].as_object().expect("responses");
    assert_eq!(
        responses.keys().map(String::as_str).collect::<Vec<_>>(),
        ["200", "404"],
        "GET has only its own answers"
    );
    assert!(get["responses"]["200"]["headers"]["Idempotent-Replayed"].is_null());
}
