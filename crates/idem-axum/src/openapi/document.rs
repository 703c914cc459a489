//! A route's [`Contract`] written into OpenAPI 3.1 operations: the key's header
//! parameter, `Idempotent-Replayed` on the route's own answers, and one response per
//! status the layer answers with, its `type`s listed, referring to one RFC 9457
//! problem schema.

use http::{Method, StatusCode};
use idem_core::MAX_KEY_LEN;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn, PathItem, Paths};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{
    AllOfBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type,
};
use utoipa::openapi::{Ref, RefOr, Required, Schema};

use super::contract::Contract;
use crate::{PROBLEM_JSON, Problem};

/// The name of the problem schema among the document's components.
pub const PROBLEM_SCHEMA: &str = "IdempotencyProblem";

/// A component schema: its name and the schema.
pub(crate) type Component = (String, RefOr<Schema>);

/// Writes `contract` into every operation of `paths` whose method takes part; returns
/// the component schemas they refer to (none when no operation was written).
pub(crate) fn write(contract: &Contract, paths: &mut Paths) -> Vec<Component> {
    let mut written = false;
    for item in paths.paths.values_mut() {
        for method in &contract.methods {
            if let Some(operation) = operation_mut(item, method) {
                write_operation(contract, operation);
                written = true;
            }
        }
    }
    if written && !contract.answers.is_empty() {
        vec![(PROBLEM_SCHEMA.to_owned(), problem_schema())]
    } else {
        Vec::new()
    }
}

fn operation_mut<'a>(item: &'a mut PathItem, method: &Method) -> Option<&'a mut Operation> {
    match method.as_str() {
        "GET" => item.get.as_mut(),
        "PUT" => item.put.as_mut(),
        "POST" => item.post.as_mut(),
        "DELETE" => item.delete.as_mut(),
        "OPTIONS" => item.options.as_mut(),
        "HEAD" => item.head.as_mut(),
        "PATCH" => item.patch.as_mut(),
        "TRACE" => item.trace.as_mut(),
        _ => None,
    }
}

fn write_operation(contract: &Contract, operation: &mut Operation) {
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    parameters.retain(|p| match p {
        RefOr::T(p) => {
            !(p.parameter_in == ParameterIn::Header
                && p.name.eq_ignore_ascii_case(&contract.key_header))
        }
        RefOr::Ref(_) => true,
    });
    parameters.push(RefOr::T(key_parameter(contract)));
    if contract.replays {
        for response in operation.responses.responses.values_mut() {
            if let RefOr::T(response) = response {
                response
                    .headers
                    .insert(REPLAYED_HEADER.to_owned(), RefOr::T(replayed_header()));
            }
        }
    }
    for (status, problems) in contract.by_status() {
        let answer = problem_response(status, &problems);
        match operation.responses.responses.get_mut(status.as_str()) {
            Some(RefOr::T(own)) => merge(own, answer),
            // A shared response the document refers to is the application's to word.
            Some(RefOr::Ref(_)) => {}
            None => {
                operation
                    .responses
                    .responses
                    .insert(status.as_str().to_owned(), RefOr::T(answer));
            }
        }
    }
}

/// `Idempotent-Replayed`, as the response header's name is written in documents.
const REPLAYED_HEADER: &str = "Idempotent-Replayed";

fn key_parameter(contract: &Contract) -> utoipa::openapi::path::Parameter {
    let required = if contract.key_required {
        Required::True
    } else {
        Required::False
    };
    ParameterBuilder::new()
        .name(contract.key_header.clone())
        .parameter_in(ParameterIn::Header)
        .required(required)
        .description(Some(format!(
            "Identifies this request for its retries (IETF \
             draft-ietf-httpapi-idempotency-key-header): a retry with the same key and the \
             same request gets the first attempt's answer instead of running again; the \
             same key with another request is refused. 1 to {MAX_KEY_LEN} visible ASCII \
             characters; the same key as a quoted structured-field string (`\"...\"`, two \
             more characters) is accepted and unquoted. Keys are per tenant."
        )))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                // A quoted key adds its two quotes.
                .max_length(Some(MAX_KEY_LEN + 2))
                .pattern(Some(format!(
                    "^(?:[!-~]{{1,{MAX_KEY_LEN}}}|\"[!-~]{{1,{MAX_KEY_LEN}}}\")$"
                ))),
        ))
        .build()
}

fn replayed_header() -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["true"])),
        ))
        .description(Some(
            "`true` when this answer is the stored answer of an earlier request with the \
             same key, replayed byte for byte; absent on the request's own execution."
                .to_owned(),
        ))
        .build()
}

fn retry_after_header() -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1)),
        ))
        .description(Some(
            "Seconds to wait before retrying with the same key.".to_owned(),
        ))
        .build()
}

/// The response of the layer's problems with one status.
fn problem_response(status: StatusCode, problems: &[&Problem]) -> Response {
    let types: Vec<String> = problems.iter().map(|p| p.type_uri()).collect();
    let listed: Vec<String> = problems
        .iter()
        .map(|p| format!("`{}` ({})", p.slug(), p.title()))
        .collect();
    let schema = AllOfBuilder::new()
        .item(Ref::from_schema_name(PROBLEM_SCHEMA))
        .item(
            ObjectBuilder::new().property(
                "type",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(types)),
            ),
        );
    let mut response = ResponseBuilder::new()
        .description(format!(
            "{} from the idempotency layer: {}.",
            status.canonical_reason().unwrap_or("An answer"),
            listed.join(", ")
        ))
        .content(
            PROBLEM_JSON,
            ContentBuilder::new().schema(Some(schema)).build(),
        );
    if problems.iter().any(|p| p.retry_after().is_some()) {
        response = response.header("Retry-After", retry_after_header());
    }
    response.build()
}

/// The layer's answer `ours` merged into the route's own response for the same status:
/// its problem content beside the route's (both schemas allowed when the route answers
/// problem+json too), its headers where the route has none of that name.
fn merge(own: &mut Response, ours: Response) {
    own.description = format!("{} Or: {}", own.description, ours.description);
    for (media, content) in ours.content {
        match own.content.get_mut(&media) {
            Some(RefOr::T(existing)) => {
                let RefOr::T(ours) = content else {
                    continue;
                };
                let Some(theirs) = existing.schema.take() else {
                    existing.schema = ours.schema;
                    continue;
                };
                let either = OneOfBuilder::new().item(theirs).item(
                    ours.schema
                        .unwrap_or_else(|| RefOr::Ref(Ref::from_schema_name(PROBLEM_SCHEMA))),
                );
                existing.schema = Some(either.into());
            }
            Some(RefOr::Ref(_)) => {}
            None => {
                own.content.insert(media, content);
            }
        }
    }
    for (name, header) in ours.headers {
        own.headers.entry(name).or_insert(header);
    }
}

/// RFC 9457's problem details, as the layer writes them.
fn problem_schema() -> RefOr<Schema> {
    let string = || ObjectBuilder::new().schema_type(Type::String);
    let integer = || ObjectBuilder::new().schema_type(Type::Integer);
    ObjectBuilder::new()
        .description(Some(
            "An answer of the idempotency layer itself (RFC 9457 problem details); `type` \
             is stable per case.",
        ))
        .property(
            "type",
            string()
                .format(Some(SchemaFormat::Custom("uri".to_owned())))
                .description(Some("`urn:idem:problem:<slug>`, one per case.")),
        )
        .required("type")
        .property("title", string())
        .required("title")
        .property("status", integer())
        .required("status")
        .property("detail", string())
        .required("detail")
        .property(
            "original_status",
            integer().description(Some(
                "410 only: the status the original request was answered with.",
            )),
        )
        .property(
            "original_completed_at",
            string()
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
                .description(Some(
                    "410 `key-expired` only: when the original request completed.",
                )),
        )
        .into()
}
