//! The image routes: import an archive, pull from a registry, build from a
//! Dockerfile, list, inspect and delete.
//!
//! An import's body is the archive itself, streamed to disk as it arrives
//! (it may be gigabytes: the API's body limit does not apply). A name is a
//! reference with slashes (`localhost:5000/team/app:v1`); in a path it is
//! one segment, its slashes percent-encoded.

use super::audit_trail::Call;
use super::detached::detached;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::request_id::carry;
use super::AppState;
use crate::images::pull::BlobProgress;
use crate::sandbox::BuildRequest;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use sbx_api::{
    BuildEvent, BuildImageQuery, Image, ImageList, ImagePath, ImportImageQuery, PullEvent,
    PullImageRequest, NDJSON,
};
use std::sync::Arc;
use tokio::sync::mpsc;

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

/// Pull an image from a registry.
///
/// Over the OCI distribution API, anonymously, with a username and
/// password (basic auth, which also gets a token service's bearer token)
/// or with a bearer token. Plain HTTP only for a registry on loopback or
/// one marked `insecure`. Every blob is checked against its digest. With
/// `Accept: application/x-ndjson` the answer streams `PullEvent`s: each
/// blob's progress, then `done` with the image or `error`.
#[utoipa::path(post, path = "/images/pull", tag = "images", operation_id = "pull_image",
    request_body = PullImageRequest,
    responses(
        (status = 201, body = Image),
        (status = 200, description = "With Accept: application/x-ndjson, one PullEvent per line",
            content((PullEvent = "application/x-ndjson")))))]
pub async fn pull(
    State(state): State<AppState>,
    call: Call,
    headers: HeaderMap,
    ApiJson(request): ApiJson<PullImageRequest>,
) -> Result<Response, ApiError> {
    call.summary(&request.reference);
    request.validate().map_err(ApiError::invalid)?;
    let (progress, mut blobs) = mpsc::unbounded_channel::<BlobProgress>();
    let manager = Arc::clone(&state.manager);
    let tasks = state.detached.clone();
    let pulled = move |call| async move {
        detached(&tasks, call, |_| async move {
            Ok(manager.pull_image(request, progress).await?)
        })
        .await
    };
    if !wants_ndjson(&headers) {
        let image = pulled(call).await?;
        return Ok((StatusCode::CREATED, Json(image)).into_response());
    }
    let (lines, mut body) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(carry(async move {
        let forward_lines = lines.clone();
        let forward = tokio::spawn(async move {
            while let Some(blob) = blobs.recv().await {
                let event = PullEvent::Blob {
                    digest: blob.digest,
                    received: blob.received,
                    size: blob.size,
                };
                let _ = forward_lines.send(ndjson_line(&event));
            }
        });
        let last = match pulled(call).await {
            Ok(image) => PullEvent::Done { image },
            Err(err) => PullEvent::Error { error: err.body() },
        };
        // The progress sender is gone with the pull: this ends.
        let _ = forward.await;
        let _ = lines.send(ndjson_line(&last));
    }));
    let stream = futures_util::stream::poll_fn(move |cx| body.poll_recv(cx))
        .map(Ok::<_, std::convert::Infallible>);
    Ok(([(CONTENT_TYPE, NDJSON)], Body::from_stream(stream)).into_response())
}

/// Build an image from a Dockerfile.
///
/// The body is the build context as a tar (the Dockerfile inside it).
/// sbx builds it itself, on the server's runtime: each step runs in a
/// sandbox of the image so far, and each layer is what the step changed.
/// Supported: `FROM` (an image here, or pulled), `RUN`, `COPY` and `ADD`
/// (context files, `--chown`; `ADD` unpacks a local tar), `ENV`,
/// `WORKDIR`, `USER`, `ARG`, `LABEL`, `CMD`, `ENTRYPOINT`; anything else is
/// a 400 naming it and its line. Steps are cached by content. `RUN` has no
/// network unless `allow` names hosts. With `Accept: application/x-ndjson`
/// the answer streams `BuildEvent`s: each step, its output, then `done`
/// with the image or `error`.
#[utoipa::path(post, path = "/images/build", tag = "images", operation_id = "build_image",
    params(BuildImageQuery),
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "The build context"),
    responses(
        (status = 201, body = Image),
        (status = 200, description = "With Accept: application/x-ndjson, one BuildEvent per line",
            content((BuildEvent = "application/x-ndjson")))))]
pub async fn build(
    State(state): State<AppState>,
    call: Call,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<BuildImageQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    call.summary(&query.name);
    let request = BuildRequest::from_query(query)?;
    let (events, mut progress) = mpsc::unbounded_channel::<BuildEvent>();
    let manager = Arc::clone(&state.manager);
    let tasks = state.detached.clone();
    let context = body.into_data_stream();
    let built = move |call| async move {
        detached(&tasks, call, |_| async move {
            Ok(manager.build_image(context, request, events).await?)
        })
        .await
    };
    if !wants_ndjson(&headers) {
        let image = built(call).await?;
        return Ok((StatusCode::CREATED, Json(image)).into_response());
    }
    let (lines, mut body) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(carry(async move {
        let forward_lines = lines.clone();
        let forward = tokio::spawn(async move {
            while let Some(event) = progress.recv().await {
                let _ = forward_lines.send(ndjson_line(&event));
            }
        });
        let last = match built(call).await {
            Ok(image) => BuildEvent::Done { image },
            Err(err) => BuildEvent::Error { error: err.body() },
        };
        // The events' sender is gone with the build: this ends.
        let _ = forward.await;
        let _ = lines.send(ndjson_line(&last));
    }));
    let stream = futures_util::stream::poll_fn(move |cx| body.poll_recv(cx))
        .map(Ok::<_, std::convert::Infallible>);
    Ok(([(CONTENT_TYPE, NDJSON)], Body::from_stream(stream)).into_response())
}

fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains(NDJSON))
}

fn ndjson_line(event: &impl serde::Serialize) -> Bytes {
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
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
