//! Extractors whose rejections are [`ApiError`]s, so that even a malformed
//! body or path gets the API's JSON error body instead of axum's plain text.

use super::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts};

#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);
