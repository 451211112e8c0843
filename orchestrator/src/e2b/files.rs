//! envd's REST `/files`: a file's bytes down, and up as multipart (the
//! SDKs' plain writes, several files per request) or as one octet-stream
//! body (their streamed writes). Bodies are streamed both ways, never
//! held whole; the sandbox's disk limit bounds them.
//!
//! A written file's parent directories are made too, as envd does; the
//! file and those directories belong to the user the call names.
//! Gzip-encoded uploads are refused with 415: the SDKs send them only when
//! asked to (`gzip=True`).

use super::envd::Envd;
use super::error::{E2bError, JsonError};
use super::filesystem::{absolute, owner_of};
use super::sbx::encode;
use super::E2b;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sbx_api::e2b::{FilesQuery, WriteInfo};
use sbx_api::{ErrorBody, ErrorCode};
use tokio::sync::mpsc;

pub async fn download(
    State(state): State<E2b>,
    headers: HeaderMap,
    Query(query): Query<FilesQuery>,
) -> Result<Response, JsonError> {
    let envd = Envd::new(&state, &headers, "files.read")?;
    let user = query.username.as_deref().or(envd.user.as_deref());
    let path = absolute(query.path.as_deref().unwrap_or_default(), user);
    let read = envd
        .sbx
        .send(
            Method::GET,
            &envd.uri(&format!("files?path={}", encode(&path))),
            Body::empty(),
            None,
        )
        .await?;
    Ok((
        [(CONTENT_TYPE, "application/octet-stream")],
        read.into_body(),
    )
        .into_response())
}

pub async fn upload(
    State(state): State<E2b>,
    Query(query): Query<FilesQuery>,
    request: Request,
) -> Result<Response, JsonError> {
    let envd = Envd::new(&state, request.headers(), "files.write")?;
    let user = query.username.clone().or_else(|| envd.user.clone());
    if request.headers().contains_key(CONTENT_ENCODING) {
        return Err(unsupported_encoding().into());
    }
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut written = Vec::new();
    if content_type.starts_with("multipart/form-data") {
        let mut form = Multipart::from_request(request, &())
            .await
            .map_err(|err| E2bError::invalid(format!("a malformed form: {err}")))?;
        let mut named = query.path.clone();
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|err| E2bError::invalid(format!("a malformed form: {err}")))?
        {
            let target = named
                .take()
                .or_else(|| field.file_name().map(str::to_string))
                .ok_or_else(|| E2bError::invalid("a file part without a path"))?;
            let path = absolute(&target, user.as_deref());
            written.push(write(&envd, &path, user.as_deref(), field_body(field)).await?);
        }
    } else {
        let target = query
            .path
            .as_deref()
            .ok_or_else(|| E2bError::invalid("path is required"))?;
        let path = absolute(target, user.as_deref());
        written.push(write(&envd, &path, user.as_deref(), request.into_body()).await?);
    }
    Ok((StatusCode::OK, Json(written)).into_response())
}

fn unsupported_encoding() -> E2bError {
    E2bError::Api(ErrorBody::new(
        ErrorCode::InvalidRequest,
        "compressed uploads are not supported: write without gzip",
    ))
}

/// A form part as a body of its own: its chunks are passed on as the
/// write reads them.
fn field_body(mut field: axum::extract::multipart::Field<'_>) -> FieldPump<'_> {
    let (chunks, mut pending) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let body = Body::from_stream(futures_util::stream::poll_fn(move |cx| {
        pending.poll_recv(cx)
    }));
    let pump = async move {
        loop {
            let next = field.chunk().await.map_err(|err| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, err.to_string())
            });
            let done = !matches!(next, Ok(Some(_)));
            let sent = match next {
                Ok(Some(chunk)) => chunks.send(Ok(chunk)).await,
                Ok(None) => Ok(()),
                Err(err) => chunks.send(Err(err)).await,
            };
            if done || sent.is_err() {
                return;
            }
        }
    };
    FieldPump {
        body,
        pump: Box::pin(pump),
    }
}

/// A form part's body and the task that fills it, run together by
/// [`write`].
struct FieldPump<'a> {
    body: Body,
    pump: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>,
}

impl From<Body> for FieldPump<'_> {
    fn from(body: Body) -> Self {
        FieldPump {
            body,
            pump: Box::pin(async {}),
        }
    }
}

/// Writes `path` for `user`: the file, and the parents the agent makes
/// for it, are theirs.
async fn write<'a>(
    envd: &Envd,
    path: &str,
    user: Option<&str>,
    body: impl Into<FieldPump<'a>>,
) -> Result<WriteInfo, E2bError> {
    let FieldPump { body, pump } = body.into();
    let mut uri = envd.uri(&format!("files?path={}", encode(path)));
    if let Some(owner) = owner_of(user) {
        uri.push_str(&format!("&owner={}", encode(&owner)));
    }
    let put = envd
        .sbx
        .send(Method::PUT, &uri, body, Some("application/octet-stream"));
    let (written, ()) = tokio::join!(put, pump);
    written?;
    Ok(WriteInfo {
        name: path.rsplit('/').next().unwrap_or(path).to_string(),
        kind: "file",
        path: path.to_string(),
    })
}
