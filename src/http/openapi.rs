//! `GET /openapi.json`: the OpenAPI 3.1 description of the public API,
//! generated from the handlers' annotations and the request and response
//! types. `openapi.json` at the repository root is a committed copy; a test
//! fails when the two differ (`flashgate openapi > openapi.json` updates it).

use axum::Json;
use utoipa::{
    Modify, OpenApi, ToResponse,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use super::{admin, inventory, ops, problem::Problem, reservations};

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
        reservations::create,
        reservations::get,
        reservations::confirm,
        reservations::release,
        admin::set_stock,
        admin::set_policy,
        admin::adjust,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        document,
    ),
    components(
        schemas(Problem),
        responses(
            Unauthorized,
            Forbidden,
            UnknownSku,
            ReservationNotFound,
            ValidationFailed,
            RateLimited,
            Unavailable
        )
    ),
    modifiers(&BearerAuth),
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
    Unauthorized: "No valid token (`unauthorized`)";
    Forbidden: "The token lacks the `inventory:admin` scope (`forbidden`)";
    UnknownSku: "`unknown-sku`";
    ReservationNotFound: "No such reservation for this account (`reservation-not-found`)";
    ValidationFailed: "A field is out of range or unknown (`validation-failed`)";
    RateLimited: "`rate-limited`; retry after `Retry-After` (whole seconds)";
    Unavailable: "`overloaded`, `unavailable`, or `sku-recovering` (Redis lost writes of the SKU, which is being rebuilt from the journal); retry after `Retry-After`";
}

/// Adds the HS256 bearer token scheme the `security` entries name.
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
                    .description(Some("HS256, signed with `auth.secret`; `exp` is required"))
                    .build(),
            ),
        );
    }
}

/// The description, with the running version.
pub fn description() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// The description as the committed `openapi.json` holds it.
pub fn pretty_json() -> String {
    // Serialising a tree of strings, maps and numbers cannot fail.
    serde_json::to_string_pretty(&description()).unwrap_or_default() + "\n"
}

/// `GET /openapi.json`
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
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

    #[test]
    fn every_routed_path_is_described() {
        let doc = description();
        for path in [
            "/v1/inventory/{sku}",
            "/v1/reservations",
            "/v1/reservations/{id}",
            "/v1/reservations/{id}/confirm",
            "/v1/reservations/{id}/release",
            "/v1/admin/inventory/{sku}/locations/{location}",
            "/v1/admin/inventory/{sku}",
            "/v1/admin/inventory/{sku}/locations/{location}/adjustments",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(doc.paths.paths.contains_key(path), "{path} is missing");
        }
        assert_eq!(doc.paths.paths.len(), 12);
        let json = serde_json::to_value(&doc).unwrap();
        assert!(json["openapi"].as_str().unwrap().starts_with("3.1"));
    }
}
