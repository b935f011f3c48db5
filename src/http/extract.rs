//! Extractors that turn raw requests into checked values or problems.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{StatusCode, header::AUTHORIZATION, request::Parts},
};
use serde::de::DeserializeOwned;

use super::{problem::ApiError, state::AppState};
use crate::auth::{Caller, Role};

/// A JSON object body: 413 past the body limit, 400 when it is not JSON, 422
/// when it is JSON but not an object (serde would read a struct from an
/// array) or does not fit the expected shape (unknown fields included).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::MalformedJson("the request body could not be read".into())
            }
        })?;
        let starts_an_object = bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b == b'{');
        if !starts_an_object {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                    Ok(_) => ApiError::Validation("the body must be a JSON object".into()),
                    Err(e) => malformed(&e),
                },
            );
        }
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Data => ApiError::Validation(e.to_string()),
                Category::Syntax | Category::Eof | Category::Io => malformed(&e),
            }
        })
    }
}

fn malformed(e: &serde_json::Error) -> ApiError {
    ApiError::MalformedJson(format!("the body is not valid JSON: {e}"))
}

fn caller(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    Ok(state.auth.verify(header)?)
}

/// Any authenticated caller, shopper or admin.
pub struct Authenticated(pub Caller);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        caller(parts, state).map(Authenticated)
    }
}

/// A caller with the `inventory:admin` scope; 403 for any other valid token.
pub struct Admin(pub Caller);

/// A caller that may read what admins read (`inventory:admin` or
/// `inventory:read`); 403 for any other valid token.
pub struct Reader(pub Caller);

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = caller(parts, state)?;
        match caller.grants.reads() {
            true => Ok(Reader(caller)),
            false => Err(ApiError::Forbidden),
        }
    }
}

/// A caller that may write some location's stock (`inventory:admin`, or an
/// `inventory:write:location:<location>` scope; the handler checks the
/// location); 403 for any other valid token.
pub struct StockWriter(pub Caller);

impl FromRequestParts<AppState> for StockWriter {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = caller(parts, state)?;
        match caller.grants.writes_stock() {
            true => Ok(StockWriter(caller)),
            false => Err(ApiError::Forbidden),
        }
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = caller(parts, state)?;
        match caller.role {
            Role::Admin => Ok(Admin(caller)),
            Role::Shopper => Err(ApiError::Forbidden),
        }
    }
}

/// A caller that may read one SKU's admin views: a reader (`inventory:admin`,
/// `inventory:read`) or a seller (`inventory:seller`, who reaches only its
/// own SKUs: `seller_may`); 403 for any other valid token.
pub struct SkuReader(pub Caller);

impl FromRequestParts<AppState> for SkuReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = caller(parts, state)?;
        match caller.grants.reads() || caller.grants.seller.is_some() {
            true => Ok(SkuReader(caller)),
            false => Err(ApiError::Forbidden),
        }
    }
}

/// A caller that may write some SKU's stock: a stock writer (see
/// `StockWriter`) or a seller (its own SKUs only: `seller_may`); 403 for
/// any other valid token.
pub struct SkuWriter(pub Caller);

impl FromRequestParts<AppState> for SkuWriter {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = caller(parts, state)?;
        match caller.grants.writes_stock() || caller.grants.seller.is_some() {
            true => Ok(SkuWriter(caller)),
            false => Err(ApiError::Forbidden),
        }
    }
}

/// A caller that may change a SKU's policy and its holds: an admin, or a
/// seller (its own SKUs only: `seller_may`); 403 for any other valid token.
pub struct SkuOperator(pub Caller);

impl FromRequestParts<AppState> for SkuOperator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = caller(parts, state)?;
        match caller.role == Role::Admin || caller.grants.seller.is_some() {
            true => Ok(SkuOperator(caller)),
            false => Err(ApiError::Forbidden),
        }
    }
}

/// 404 `unknown-sku` unless a seller's token reaches `sku` (its policy
/// names that seller); every other token passes.
pub async fn seller_may(
    state: &AppState,
    caller: &Caller,
    sku: &crate::inventory::Sku,
) -> Result<(), ApiError> {
    let Some(seller) = caller.grants.seller_only() else {
        return Ok(());
    };
    match state.inventory.seller_of(sku).await? {
        Some(owner) if owner == seller.as_str() => Ok(()),
        _ => Err(ApiError::UnknownSku),
    }
}
