//! `/v1/sandboxes` handlers. Create, update and delete run
//! [`detached`]: they finish even if their client leaves.

use super::audit_trail::{Call, Summary};
use super::detached::detached;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::AppState;
use crate::runtime::Feature;
use crate::sandbox::EndReason;
use crate::tokens::Principal;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use sbx_api::{
    ClusterInfo, CreateSandboxRequest, CreatedSandbox, IsolationInfo, RuntimeInfo, Sandbox,
    SandboxList, SandboxPath, ServerInfo, StorageInfo, UpdateSandboxRequest,
};
use std::sync::Arc;

/// What is serving.
///
/// The sbx version, the container engine, and the isolation it enforces
/// on every sandbox.
#[utoipa::path(get, path = "/info", tag = "server", operation_id = "server_info",
    responses((status = 200, body = ServerInfo)))]
pub async fn info(State(state): State<AppState>) -> Result<Json<ServerInfo>, ApiError> {
    let runtime = state.manager.runtime();
    let isolation = runtime.isolation();
    let image_mapping = isolation
        .image_mapping
        .clone()
        .map(|mapping| match mapping {
            Ok(how) => (how, None),
            Err(reason) => (
                crate::runtime::IMAGES_SHIFTED_COPY,
                Some(format!("images are copied with shifted owners: {reason}")),
            ),
        });
    let notes = [
        isolation.user_namespace_note.clone(),
        isolation.disk_quota.clone().err(),
        image_mapping.as_ref().and_then(|(_, note)| note.clone()),
    ];
    let storage = state.manager.storage().await?;
    Ok(Json(ServerInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        storage: StorageInfo {
            snapshot_method: state.manager.snapshot_method().to_owned(),
            pool_bytes: storage.pool_bytes,
            used_bytes: storage.used_bytes,
            promised_bytes: storage.promised_bytes,
            overcommit: storage.overcommit,
        },
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
                image_mapping: image_mapping.map(|(how, _)| how.to_owned()),
                notes: notes.into_iter().flatten().collect(),
            },
            cluster: runtime.cluster().await.map(|cluster| ClusterInfo {
                server_version: cluster.server_version,
                nodes: cluster.nodes,
                namespace: cluster.namespace,
            }),
            unsupported: Feature::ALL
                .into_iter()
                .filter_map(|feature| {
                    let reason = runtime.refuses(feature)?;
                    Some((feature.name().to_owned(), reason.to_owned()))
                })
                .collect(),
        },
    }))
}

/// Create a sandbox.
///
/// Answers once the sandbox is started and its agent serves, with the
/// sandbox and a token bound to it (shown once).
#[utoipa::path(post, path = "/sandboxes", tag = "sandboxes", operation_id = "create_sandbox",
    request_body = CreateSandboxRequest,
    responses((status = 201, body = CreatedSandbox)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Principal>>,
    call: Call,
    ApiJson(request): ApiJson<CreateSandboxRequest>,
) -> Result<(StatusCode, Json<CreatedSandbox>), ApiError> {
    call.summary(request.summary());
    let task_state = state.clone();
    let created = detached(&state.detached, call, |call| async move {
        create_with_token(&task_state, &caller, &call, request).await
    })
    .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Creates the sandbox and mints its token. A sandbox whose token cannot
/// be handed out is deleted again rather than left running unannounced.
async fn create_with_token(
    state: &AppState,
    caller: &Principal,
    call: &Call,
    request: CreateSandboxRequest,
) -> Result<CreatedSandbox, ApiError> {
    let sandbox = state.manager.create(request).await?;
    call.sandbox(&sandbox.id);
    match state.tokens.mint_for_sandbox(caller, &sandbox.id) {
        Ok(token) => Ok(CreatedSandbox { sandbox, token }),
        Err(err) => {
            let reason = EndReason::Client(caller.name.clone());
            if let Err(cleanup) = state.manager.delete(&sandbox.id, reason).await {
                tracing::error!(id = %sandbox.id, error = %cleanup, "cannot delete a sandbox without a token");
            }
            Err(err.into())
        }
    }
}

/// List sandboxes.
///
/// Every sandbox the server knows.
#[utoipa::path(get, path = "/sandboxes", tag = "sandboxes", operation_id = "list_sandboxes",
    responses((status = 200, body = SandboxList)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<SandboxList>, ApiError> {
    let sandboxes = state.manager.list().await?;
    Ok(Json(SandboxList { sandboxes }))
}

/// Get a sandbox.
///
/// A sandbox that ended by its lifecycle (timeout, idle) is still
/// answered, as `deleted` with its `ended_reason`, for the server's
/// retention period.
#[utoipa::path(get, path = "/sandboxes/{id}", tag = "sandboxes", operation_id = "get_sandbox",
    params(SandboxPath), responses((status = 200, body = Sandbox)))]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(state.manager.get(&id).await?))
}

/// Change a sandbox.
///
/// Today its network policy: applied to new connections at once (see
/// `Manager::update`).
#[utoipa::path(patch, path = "/sandboxes/{id}", tag = "sandboxes", operation_id = "update_sandbox",
    params(SandboxPath), request_body = UpdateSandboxRequest,
    responses((status = 200, body = Sandbox)))]
pub async fn update(
    State(state): State<AppState>,
    call: Call,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<UpdateSandboxRequest>,
) -> Result<Json<Sandbox>, ApiError> {
    let manager = Arc::clone(&state.manager);
    let updated = detached(&state.detached, call, |_| async move {
        Ok(manager.update(&id, request).await?)
    })
    .await?;
    Ok(Json(updated))
}

/// Delete a sandbox.
///
/// Its processes, its disk and its tokens go with it.
#[utoipa::path(delete, path = "/sandboxes/{id}", tag = "sandboxes", operation_id = "delete_sandbox",
    params(SandboxPath), responses((status = 204, description = "Deleted")))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Principal>>,
    call: Call,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let manager = Arc::clone(&state.manager);
    let reason = EndReason::Client(caller.name.clone());
    detached(&state.detached, call, |_| async move {
        Ok(manager.delete(&id, reason).await?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
