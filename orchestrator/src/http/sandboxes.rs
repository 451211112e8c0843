//! `/v1/sandboxes` handlers.

use super::audit::{AuditNote, Summary};
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::AppState;
use crate::tokens::Principal;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Extension, Json};
use sbx_api::{
    CreateSandboxRequest, CreatedSandbox, IsolationInfo, RuntimeInfo, Sandbox, SandboxList,
    ServerInfo, UpdateSandboxRequest,
};
use std::sync::Arc;

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
    Extension(caller): Extension<Arc<Principal>>,
    ApiJson(request): ApiJson<CreateSandboxRequest>,
) -> Response {
    let note = AuditNote::new(request.summary());
    match create_with_token(&state, &caller, request).await {
        Ok(created) => note
            .with_sandbox(&created.sandbox.id)
            .attach((StatusCode::CREATED, Json(created))),
        Err(err) => note.attach(err),
    }
}

/// Creates the sandbox and mints its token. A sandbox whose token cannot
/// be handed out is deleted again rather than left running unannounced.
async fn create_with_token(
    state: &AppState,
    caller: &Principal,
    request: CreateSandboxRequest,
) -> Result<CreatedSandbox, ApiError> {
    let sandbox = state.manager.create(request).await?;
    match state.tokens.mint_for_sandbox(caller, &sandbox.id) {
        Ok(token) => Ok(CreatedSandbox { sandbox, token }),
        Err(err) => {
            if let Err(cleanup) = state.manager.delete(&sandbox.id).await {
                tracing::error!(id = %sandbox.id, error = %cleanup, "cannot delete a sandbox without a token");
            }
            Err(err.into())
        }
    }
}

pub async fn list(State(state): State<AppState>) -> Result<Json<SandboxList>, ApiError> {
    let sandboxes = state.manager.list().await?;
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
