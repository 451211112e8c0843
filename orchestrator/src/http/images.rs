//! The image routes: import an archive, list, inspect and delete.
//!
//! An import's body is the archive itself, streamed to disk as it arrives
//! (it may be gigabytes: the API's body limit does not apply). A name is a
//! reference with slashes (`localhost:5000/team/app:v1`); in a path it is
//! one segment, its slashes percent-encoded.

use super::audit_trail::Call;
use super::detached::detached;
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery};
use super::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use sbx_api::{Image, ImageList, ImagePath, ImportImageQuery};
use std::sync::Arc;

/// Import an image.
///
/// The body is a tar: `docker save` output, or an OCI image layout (what
/// `skopeo copy … oci-archive:` writes). Every blob is checked against its
/// digest and every layer applied confined to the image's root. Layers
/// already held (by chain) are shared, not applied again. The image is
/// ready to start on the server's runtime when this answers.
#[utoipa::path(post, path = "/images/import", tag = "images", operation_id = "import_image",
    params(ImportImageQuery),
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "The archive"),
    responses((status = 201, body = Image)))]
pub async fn import(
    State(state): State<AppState>,
    call: Call,
    ApiQuery(query): ApiQuery<ImportImageQuery>,
    body: Body,
) -> Result<(StatusCode, Json<Image>), ApiError> {
    if let Some(name) = &query.name {
        call.summary(name);
    }
    let image = state
        .manager
        .import_image(body.into_data_stream(), query.name)
        .await?;
    call.summary(&image.name);
    Ok((StatusCode::CREATED, Json(image)))
}

/// List images.
#[utoipa::path(get, path = "/images", tag = "images", operation_id = "list_images",
    responses((status = 200, body = ImageList)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<ImageList>, ApiError> {
    let images = state.manager.list_images().await?;
    Ok(Json(ImageList { images }))
}

/// Get an image.
///
/// `name` without a tag or digest means `:latest` unless an image has the
/// bare name (as `base` does).
#[utoipa::path(get, path = "/images/{name}", tag = "images", operation_id = "get_image",
    params(ImagePath), responses((status = 200, body = Image)))]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Image>, ApiError> {
    Ok(Json(state.manager.image(&name).await?))
}

/// Delete an image.
///
/// Refused (409) while a sandbox or snapshot is made from it, and for the
/// default image. Its files go once nothing uses them; layers other images
/// share stay.
#[utoipa::path(delete, path = "/images/{name}", tag = "images", operation_id = "delete_image",
    params(ImagePath), responses((status = 204, description = "Deleted")))]
pub async fn delete(
    State(state): State<AppState>,
    call: Call,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    call.summary(&name);
    let manager = Arc::clone(&state.manager);
    detached(&state.detached, call, |_| async move {
        Ok(manager.delete_image(&name).await?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
