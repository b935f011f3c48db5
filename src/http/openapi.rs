//! `GET /openapi.json`: the OpenAPI 3.1 description of the public API,
//! generated from the handlers' annotations and the request and response
//! types. `openapi.json` at the repository root is a committed copy; a test
//! fails when the two differ (`flashgate openapi > openapi.json` updates it).

use axum::Json;
use utoipa::{
    Modify, OpenApi, ToResponse,
    openapi::{
        RefOr,
        header::Header,
        schema::{Object, Type},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use super::{
    admin, carts, feed, inventory, listings, live, ops, problem::Problem, queue, reservations,
    webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "flashgate",
        description = "A flash-sale contention gateway: atomic reservations on Redis, \
                       journaled to Postgres. Errors are RFC 9457 problem details; every \
                       response carries `X-Request-Id`."
    ),
    paths(
        inventory::get,
        live::events,
        live::page,
        reservations::create,
        listings::mine,
        listings::all,
        listings::skus,
        listings::history,
        reservations::get,
        reservations::confirm,
        reservations::release,
        reservations::extend,
        reservations::change,
        reservations::operator_release,
        admin::import,
        queue::take,
        queue::get,
        queue::events,
        carts::create,
        carts::get,
        carts::confirm,
        carts::release,
        admin::set_stock,
        admin::set_policy,
        admin::get_sku,
        admin::adjust,
        admin::rebalance,
        feed::list,
        webhooks::create,
        webhooks::list,
        webhooks::delete,
        webhooks::deliveries,
        webhooks::retry,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        document,
    ),
    components(
        schemas(Problem),
        responses(
            BadRequest,
            PayloadTooLarge,
            HeadersTooLarge,
            Internal,
            Unauthorized,
            Forbidden,
            UnknownSku,
            ReservationNotFound,
            ValidationFailed,
            RateLimited,
            Unavailable
        )
    ),
    // Common answers first, so that their headers are declared too.
    modifiers(&BearerAuth, &CommonResponses, &ResponseHeaders),
    tags(
        (name = "shopper", description = "Stock and reservations; a shopper token's `sub` is the account"),
        (name = "admin", description = "Stock and sale policy; tokens with the `inventory:admin` scope"),
        (name = "operations", description = "Probes, metrics and this description"),
    )
)]
struct ApiDoc;

/// Declares a problem answer that several routes give, once, so each
/// route's description refers to it (`response = Unauthorized`). These types
/// exist only in the description: the answers are `ApiError`s.
macro_rules! problem_responses {
    ($($name:ident: $description:literal;)+) => {$(
        #[derive(ToResponse)]
        #[response(description = $description, content_type = "application/problem+json")]
        #[expect(dead_code, reason = "described in /openapi.json, never built")]
        pub struct $name(Problem);
    )+};
}

problem_responses! {
    BadRequest: "`malformed-json` (the body is not JSON, or not an object), or `bad-request` (a path segment that is not UTF-8, a header that cannot be read)";
    PayloadTooLarge: "The body is over `http.body_limit_bytes` (`payload-too-large`)";
    HeadersTooLarge: "More than 100 header fields or 32 KiB of them (`header-fields-too-large`)";
    Internal: "A fault in the gateway (`internal`); the body says nothing more, the log has the `request_id`";
    Unauthorized: "No valid token (`unauthorized`)";
    Forbidden: "The token's scopes do not allow this (`forbidden`): admin endpoints need `inventory:admin`; their GETs also take `inventory:read`, stock writes and adjustments at a location also take `inventory:write:location:<location>`";
    UnknownSku: "`unknown-sku`";
    ReservationNotFound: "No such reservation for this account (`reservation-not-found`)";
    ValidationFailed: "A field is out of range or unknown (`validation-failed`)";
    RateLimited: "`rate-limited`; retry after `Retry-After` (whole seconds)";
    Unavailable: "`overloaded`, `unavailable`, or `sku-recovering` (Redis lost writes of the SKU, which is being rebuilt from the journal); retry after `Retry-After`";
}

/// Adds the bearer token scheme the `security` entries name.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("HS256 signed with `auth.secret`, or RS256/ES256 signed by a key of `auth.jwks_file` / `auth.jwks_url`; `exp` is required"))
                    .build(),
            ),
        );
    }
}

/// The headers responses carry, declared on every response that sends
/// them: `(header, schema type, description, which responses)`.
const HEADERS: &[(&str, Type, &str, Sends)] = &[
    (
        "X-Request-Id",
        Type::String,
        "The request's id: the client's `X-Request-Id` when valid, else a fresh one; also in every problem body",
        Sends::Every,
    ),
    (
        "Retry-After",
        Type::Integer,
        "Whole seconds to wait before retrying (at least 1)",
        Sends::Status(&["429", "503"]),
    ),
    (
        "WWW-Authenticate",
        Type::String,
        "`Bearer`",
        Sends::Status(&["401"]),
    ),
    (
        "RateLimit-Policy",
        Type::String,
        "The tightest admission limit that applies (IETF RateLimit headers draft), when limits are on",
        Sends::Operation("createReservation"),
    ),
    (
        "RateLimit",
        Type::String,
        "What is left of that limit and when it refills",
        Sends::Operation("createReservation"),
    ),
    (
        "Location",
        Type::String,
        "`/v1/reservations/{id}` of the hold",
        Sends::OperationStatus("createReservation", "201"),
    ),
    (
        "Idempotent-Replayed",
        Type::String,
        "`true` when this is the stored answer to an earlier request with the same `Idempotency-Key` and body",
        Sends::OperationStatus("createReservation", "201"),
    ),
    (
        "ETag",
        Type::String,
        "`\"<version>\"` of the SKU: what `If-Match` takes",
        Sends::OperationStatus("getInventory", "200"),
    ),
    (
        "ETag",
        Type::String,
        "`\"<version>\"` of the SKU after the change",
        Sends::OperationsStatus(&["setStock", "adjustStock"], "200"),
    ),
];

/// Which responses send a header.
enum Sends {
    Every,
    /// Responses with one of these statuses, wherever they are declared.
    Status(&'static [&'static str]),
    /// Every response of one operation.
    Operation(&'static str),
    OperationStatus(&'static str, &'static str),
    OperationsStatus(&'static [&'static str], &'static str),
}

impl Sends {
    fn applies(&self, operation: Option<&str>, status: &str) -> bool {
        match self {
            Self::Every => true,
            Self::Status(statuses) => statuses.contains(&status),
            Self::Operation(id) => operation == Some(*id),
            Self::OperationStatus(id, s) => operation == Some(*id) && status == *s,
            Self::OperationsStatus(ids, s) => {
                operation.is_some_and(|o| ids.contains(&o)) && status == *s
            }
        }
    }
}

/// Answers any operation may give, below its handler: `(status, shared
/// response, which operations)`.
const COMMON: &[(&str, &str, Takes)] = &[
    ("400", "BadRequest", Takes::PathOrBody),
    ("413", "PayloadTooLarge", Takes::Body),
    ("431", "HeadersTooLarge", Takes::Anything),
    ("500", "Internal", Takes::Anything),
];

#[derive(Clone, Copy)]
enum Takes {
    Anything,
    Body,
    PathOrBody,
}

/// Declares `COMMON` on every operation it applies to.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                let body = operation.request_body.is_some();
                for (status, name, takes) in COMMON {
                    let applies = match takes {
                        Takes::Anything => true,
                        Takes::Body => body,
                        Takes::PathOrBody => body || path.contains('{'),
                    };
                    if applies {
                        let reference = utoipa::openapi::Ref::from_response_name(*name);
                        operation
                            .responses
                            .responses
                            .entry((*status).to_owned())
                            .or_insert(RefOr::Ref(reference));
                    }
                }
            }
        }
    }
}

/// Adds `HEADERS` to the responses: inline ones under their operation, and
/// the shared ones (`components.responses`, by status: each is used with
/// one) once.
struct ResponseHeaders;

impl Modify for ResponseHeaders {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut shared_status = std::collections::BTreeMap::new();
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                let id = operation.operation_id.clone();
                for (status, response) in operation.responses.responses.iter_mut() {
                    match response {
                        RefOr::T(response) => add_headers(response, id.as_deref(), status),
                        RefOr::Ref(r) => {
                            let name = r.ref_location.rsplit('/').next().unwrap_or_default();
                            shared_status.insert(name.to_owned(), status.clone());
                        }
                    }
                }
            }
        }
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        for (name, response) in components.responses.iter_mut() {
            if let (RefOr::T(response), Some(status)) = (response, shared_status.get(name)) {
                add_headers(response, None, status);
            }
        }
    }
}

fn add_headers(response: &mut utoipa::openapi::Response, operation: Option<&str>, status: &str) {
    for (name, kind, description, sends) in HEADERS {
        if sends.applies(operation, status) {
            let mut header = Header::new(Object::with_type(kind.clone()));
            header.description = Some((*description).to_owned());
            response
                .headers
                .insert((*name).to_owned(), RefOr::T(header));
        }
    }
}

/// The description, with the running version.
pub fn description() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    // utoipa fills it from Cargo.toml, where no licence is chosen yet: an
    // empty name is invalid OpenAPI.
    doc.info.license = None;
    doc
}

/// The description as the committed `openapi.json` holds it.
pub fn pretty_json() -> String {
    // Serialising a tree of strings, maps and numbers cannot fail.
    serde_json::to_string_pretty(&description()).unwrap_or_default() + "\n"
}

/// `GET /openapi.json`
#[utoipa::path(get, path = "/openapi.json", operation_id = "getOpenApi", tag = "operations",
    summary = "This description (OpenAPI 3.1)",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(description())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_openapi_json_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == pretty_json(),
            "openapi.json differs from the code: run `cargo run -- openapi > openapi.json` \
             and commit the result"
        );
    }

    /// `(METHOD, path, operationId)` of every operation `docs/api.md`
    /// describes: a heading or list item opening with a backticked
    /// `METHOD /path` and ``(`operationId` ``, before "v1 additions" (which
    /// follows the shared contract's outline and points back to them).
    fn contract_operations() -> std::collections::BTreeSet<(String, String, String)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md");
        let text = std::fs::read_to_string(path).unwrap();
        let mut found = std::collections::BTreeSet::new();
        for line in text.lines() {
            if line.starts_with("# v1 additions") {
                break;
            }
            // An endpoint is named by a heading or a list item opening with
            // it; other mentions are prose.
            let Some(named) = line
                .strip_prefix("### ")
                .or_else(|| line.strip_prefix("- "))
            else {
                continue;
            };
            for method in ["GET", "PUT", "POST", "PATCH", "DELETE"] {
                if !named.starts_with(&format!("`{method} /")) {
                    continue;
                }
                // The path, from its `/` to the closing backtick.
                let rest = &named[method.len() + 2..];
                let Some(end) = rest.find('`') else { continue };
                let path = &rest[..end];
                let after = &rest[end + 1..];
                if let Some(id) = after
                    .trim_start()
                    .strip_prefix("(`")
                    .and_then(|t| t.split('`').next())
                {
                    found.insert((method.to_owned(), path.to_owned(), id.to_owned()));
                } else {
                    assert!(
                        after.contains("*(planned)*"),
                        "docs/api.md names `{method} {path}` without its operationId: {line}"
                    );
                }
            }
        }
        found
    }

    #[test]
    fn docs_api_md_and_openapi_json_name_the_same_operations() {
        let doc = serde_json::to_value(description()).unwrap();
        let mut described = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let id = operation["operationId"].as_str().unwrap().to_owned();
                described.insert((method.to_uppercase(), path.clone(), id));
            }
        }
        let ids: Vec<_> = described.iter().map(|(_, _, id)| id).collect();
        let unique: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(ids.len(), unique.len(), "operationIds repeat: {ids:?}");
        assert_eq!(contract_operations(), described);
    }

    #[test]
    fn every_routed_path_is_described() {
        let doc = description();
        for path in [
            "/v1/inventory/{sku}",
            "/v1/inventory/{sku}/events",
            "/live/{sku}",
            "/v1/reservations",
            "/v1/reservations/{id}",
            "/v1/reservations/{id}/confirm",
            "/v1/reservations/{id}/release",
            "/v1/reservations/{id}/extend",
            "/v1/admin/reservations/{id}/release",
            "/v1/carts",
            "/v1/carts/{id}",
            "/v1/carts/{id}/confirm",
            "/v1/carts/{id}/release",
            "/v1/admin/inventory/import",
            "/v1/queue/{sku}/tickets",
            "/v1/queue/{sku}/tickets/{ticket}",
            "/v1/queue/{sku}/tickets/{ticket}/events",
            "/v1/admin/inventory/{sku}/locations/{location}",
            "/v1/admin/inventory/{sku}",
            "/v1/admin/inventory/{sku}/locations/{location}/adjustments",
            "/v1/admin/events",
            "/v1/admin/reservations",
            "/v1/admin/inventory",
            "/v1/admin/inventory/{sku}/history",
            "/v1/admin/webhooks",
            "/v1/admin/webhooks/{id}",
            "/v1/admin/webhooks/{id}/deliveries",
            "/v1/admin/webhook-deliveries/{id}/retry",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(doc.paths.paths.contains_key(path), "{path} is missing");
        }
        assert_eq!(doc.paths.paths.len(), 33);
        let json = serde_json::to_value(&doc).unwrap();
        assert!(json["openapi"].as_str().unwrap().starts_with("3.1"));
    }
}
