//! `/v1/sandboxes` handlers.

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use sbx_api::{
    CreateSandboxRequest, IsolationInfo, RuntimeInfo, Sandbox, SandboxList, ServerInfo,
    UpdateSandboxRequest,
};

pub async fn info(State(state): State<AppState>) -> Json<ServerInfo> {
    let runtime = state.manager.runtime();
    let isolation = runtime.isolation();
    let notes = [
        isolation.user_namespace_note.clone(),
        isolation.disk_quota.clone().err(),
    ];
    Json(ServerInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        runtime: RuntimeInfo {
            name: runtime.name().to_owned(),
            version: runtime.version(),
            isolation: IsolationInfo {
                user_namespace: isolation.host_root_uid.is_some(),
                host_root_uid: isolation.host_root_uid,
                disk_quota: isolation.disk_quota.is_ok(),
                default_disk_mb: isolation
                    .disk_quota
                    .is_ok()
                    .then_some(state.manager.config().default_disk_mb),
                notes: notes.into_iter().flatten().collect(),
            },
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

/// `PATCH`: today only `network`, applied live (see `Manager::update`).
pub async fn update(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<UpdateSandboxRequest>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(state.manager.update(&id, request).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.manager.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
