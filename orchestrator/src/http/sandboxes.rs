//! `/v1/sandboxes` handlers.

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use sbx_api::{CreateSandboxRequest, Sandbox, SandboxList};

pub async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateSandboxRequest>,
) -> Result<(StatusCode, Json<Sandbox>), ApiError> {
    let sandbox = state.manager.create(request).await?;
    Ok((StatusCode::CREATED, Json(sandbox)))
}

pub async fn list(State(state): State<AppState>) -> Result<Json<SandboxList>, ApiError> {
    let sandboxes = state.manager.list()?;
    Ok(Json(SandboxList { sandboxes }))
}

pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(state.manager.get(&id)?))
}

pub async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.manager.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
