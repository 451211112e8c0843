//! `/v1/tokens` handlers. Who may mint or revoke what is decided in
//! [`crate::tokens`]; the route policy has already checked `tokens:admin`.
//! Minting and revoking run [`detached`], like every change of state.

use super::audit_trail::{Call, Summary};
use super::detached::detached;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::AppState;
use crate::tokens::Principal;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use sbx_api::{CreateTokenRequest, CreatedToken, TokenList};
use std::sync::Arc;

/// Mint a token.
///
/// A name, scopes (never beyond the caller's), an optional lifetime and
/// sandbox. The secret is in this answer only.
#[utoipa::path(post, path = "/tokens", tag = "tokens", operation_id = "create_token",
    request_body = CreateTokenRequest, responses((status = 201, body = CreatedToken)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Principal>>,
    call: Call,
    ApiJson(request): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    call.summary(request.summary());
    let tokens = Arc::clone(&state.tokens);
    let created = detached(&state.detached, call, |_| async move {
        Ok(tokens.mint(&caller, request)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// List tokens.
///
/// Every token that is neither revoked nor expired, without secrets.
#[utoipa::path(get, path = "/tokens", tag = "tokens", operation_id = "list_tokens",
    responses((status = 200, body = TokenList)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<TokenList>, ApiError> {
    let tokens = state.tokens.list()?;
    Ok(Json(TokenList { tokens }))
}

/// Revoke a token.
///
/// Calls with it get 401 from then on.
#[utoipa::path(delete, path = "/tokens/{id}", tag = "tokens", operation_id = "revoke_token",
    params(("id" = String, Path, description = "The token's id (not its secret)")),
    responses((status = 204, description = "Revoked")))]
pub async fn revoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Principal>>,
    call: Call,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    call.summary(format!("token {id}"));
    let tokens = Arc::clone(&state.tokens);
    detached(&state.detached, call, |_| async move {
        Ok(tokens.revoke(&caller, &id)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
