//! `/v1/sandboxes` handlers.

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use sbx_api::{CreateSandboxRequest, RuntimeInfo, Sandbox, SandboxList, ServerInfo};

pub async fn info(State(state): State<AppState>) -> Json<ServerInfo> {
    let runtime = state.manager.runtime();
    Json(ServerInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        runtime: RuntimeInfo {
            name: runtime.name().to_owned(),
            version: runtime.version(),
        },
    })
}

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
    Ok(Json(state.manager.get(&id).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.manager.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
