//! Extractors whose rejections are [`ApiError`]s, so that even a malformed
//! body or path gets the API's JSON error body instead of axum's plain text.

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::RequestExt;
use serde::de::DeserializeOwned;

/// A JSON body. Unlike `axum::Json` it does not insist on a
/// `Content-Type: application/json` header: `curl -d '{…}'` sends a form
/// content type, and refusing it would only make the API harder to try.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state).await?;
        sbx_api::from_json_object(&bytes)
            .map(ApiJson)
            .map_err(ApiError::invalid)
    }
}

#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// The `{id}` parameter of the matched route, as sent, for the layers that
/// run before a handler extracts its own (authorization, audit).
pub async fn raw_id_param(request: &mut Request) -> Option<String> {
    request
        .extract_parts::<axum::extract::RawPathParams>()
        .await
        .ok()?
        .iter()
        .find(|(name, _)| *name == "id")
        .map(|(_, value)| value.to_owned())
}
