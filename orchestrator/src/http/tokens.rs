//! `/v1/tokens` handlers. Who may mint or revoke what is decided in
//! [`crate::tokens`]; the route policy has already checked `tokens:admin`.

use super::audit::{AuditNote, Summary};
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::AppState;
use crate::tokens::Principal;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Extension, Json};
use sbx_api::{CreateTokenRequest, TokenList};
use std::sync::Arc;

pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Principal>>,
    ApiJson(request): ApiJson<CreateTokenRequest>,
) -> Response {
    let note = AuditNote::new(request.summary());
    let created = state.tokens.mint(&caller, request);
    note.attach(
        created
            .map(|token| (StatusCode::CREATED, Json(token)))
            .map_err(ApiError::from),
    )
}

pub async fn list(State(state): State<AppState>) -> Result<Json<TokenList>, ApiError> {
    let tokens = state.tokens.list()?;
    Ok(Json(TokenList { tokens }))
}

pub async fn revoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Principal>>,
    ApiPath(id): ApiPath<String>,
) -> Response {
    let note = AuditNote::new(format!("token {id}"));
    let revoked = state.tokens.revoke(&caller, &id);
    note.attach(
        revoked
            .map(|()| StatusCode::NO_CONTENT)
            .map_err(ApiError::from),
    )
}
