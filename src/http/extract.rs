//! Extractors that turn raw requests into checked values or problems.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{StatusCode, header::AUTHORIZATION, request::Parts},
};
use serde::de::DeserializeOwned;

use super::{problem::ApiError, state::AppState};
use crate::auth::{Caller, Role};

/// A JSON body: 413 past the body limit, 400 when it is not JSON, 422 when it
/// does not fit the expected shape (unknown fields included).
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
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Data => ApiError::Validation(e.to_string()),
                Category::Syntax | Category::Eof | Category::Io => {
                    ApiError::MalformedJson(format!("the body is not valid JSON: {e}"))
                }
            }
        })
    }
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

/// A caller with the `inventory:admin` scope; 403 for a valid shopper token.
pub struct Admin(pub Caller);

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
