//! A sandbox's ports over HTTP: `/v1/sandboxes/{id}/ports/{port}/…`
//! proxied to `127.0.0.1:{port}` inside it, and preview URLs, which serve
//! the same to a browser by a secret in the URL instead of a bearer token.
//!
//! Both are forwarded calls (see [`super::bridged`]) with every end-to-end
//! header passed (see [`Passing::Proxied`]), bodies streamed and
//! WebSockets spliced: the agent does the last hop inside the sandbox, so
//! the sandbox gets no address and no route in.
//!
//! A preview lives under a path prefix, `/p/<secret>/`, so one plain-HTTP
//! port serves every preview without wildcard DNS. A page's relative links
//! resolve under the prefix by themselves; redirects to an absolute path
//! and cookies' `Path` are rewritten into it here. Absolute paths written
//! into a page's HTML or script (`href="/about"`) leave the prefix: that is
//! the limit of a path prefix, and the README says so. A preview request
//! is audited as the preview's, with its sandbox; the secret is never
//! recorded (the route is `/p/{secret}`).

use super::audit_trail::Call;
use super::bridged::forward_parts;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::AppState;
use crate::bridge::Passing;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::any;
use axum::{Json, Router};
use sbx_api::{
    CreatePreviewRequest, ErrorCode, PortPath, Preview, PreviewList, PreviewPath, SandboxPath,
    PREVIEW_PATH_PREFIX,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The `/v1` routes. The proxy's are plain axum routes, since no OpenAPI
/// path can stand for every method and path under a port; the spec
/// describes them apart (see `super::openapi`).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_previews, create_preview))
        .routes(routes!(revoke_preview))
        .route("/sandboxes/{id}/ports/{port}/", any(proxy))
        .route("/sandboxes/{id}/ports/{port}/{*path}", any(proxy))
}

/// The preview routes, outside `/v1` and its bearer tokens.
pub fn preview_routes() -> Router<AppState> {
    Router::new()
        .route("/p/{secret}", any(to_preview_root))
        .route("/p/{secret}/", any(through_preview))
        .route("/p/{secret}/{*path}", any(through_preview))
}

/// Any request to a port.
///
/// Proxied to `127.0.0.1:{port}` inside the sandbox: method, path, query,
/// headers (but `Authorization`, which is sbx's) and body, and the answer
/// back as it comes. WebSocket upgrades pass through. 502 when nothing
/// listens there. `GET …/wait` is the wait route, not proxied.
async fn proxy(
    State(state): State<AppState>,
    call: Call,
    ApiPath(PortPath { id, port }): ApiPath<PortPath>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    call.summary(format!("port {port} {}", path_after_port(parts.uri.path())));
    let passing = Passing::Proxied {
        authorization: false,
    };
    forward_parts(&state, &id, parts, body, passing).await
}

/// `/ports/{port}/REST` of a proxied path: `/REST`.
fn path_after_port(path: &str) -> &str {
    let after = path.split_once("/ports/").map_or("", |(_, rest)| rest);
    after.find('/').map_or("/", |slash| &after[slash..])
}

/// Make a preview URL.
///
/// A URL that reaches the port without a bearer token, for a browser,
/// until it expires (`ttl_s`, an hour by default) or is revoked. The URL
/// carries a secret that only this answer shows.
#[utoipa::path(post, path = "/sandboxes/{id}/previews", tag = "ports",
    operation_id = "create_preview", params(SandboxPath), request_body = CreatePreviewRequest,
    responses((status = 201, body = Preview)))]
async fn create_preview(
    State(state): State<AppState>,
    call: Call,
    ApiPath(SandboxPath { id }): ApiPath<SandboxPath>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreatePreviewRequest>,
) -> Result<(StatusCode, Json<Preview>), ApiError> {
    call.summary(format!("preview of port {}", request.port));
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .ok_or_else(|| ApiError::invalid("a Host header is needed to make a preview's URL"))?
        .to_owned();
    let (mut preview, secret) = state.manager.create_preview(&id, request).await?;
    preview.url = Some(format!("http://{host}{PREVIEW_PATH_PREFIX}{secret}/"));
    Ok((StatusCode::CREATED, Json(preview)))
}

/// List a sandbox's previews.
///
/// The live ones, without their URLs' secrets.
#[utoipa::path(get, path = "/sandboxes/{id}/previews", tag = "ports",
    operation_id = "list_previews", params(SandboxPath),
    responses((status = 200, body = PreviewList)))]
async fn list_previews(
    State(state): State<AppState>,
    ApiPath(SandboxPath { id }): ApiPath<SandboxPath>,
) -> Result<Json<PreviewList>, ApiError> {
    let previews = state.manager.list_previews(&id).await?;
    Ok(Json(PreviewList { previews }))
}

/// Revoke a preview.
///
/// Its URL answers 404 from now on.
#[utoipa::path(delete, path = "/sandboxes/{id}/previews/{preview}", tag = "ports",
    operation_id = "revoke_preview", params(PreviewPath),
    responses((status = 204, description = "Revoked")))]
async fn revoke_preview(
    State(state): State<AppState>,
    call: Call,
    ApiPath(PreviewPath { id, preview }): ApiPath<PreviewPath>,
) -> Result<StatusCode, ApiError> {
    call.summary(format!("preview {preview}"));
    state.manager.revoke_preview(&id, &preview).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `/p/<secret>` itself: relative links resolve only under the slash.
async fn to_preview_root(uri: Uri) -> Redirect {
    let target = match uri.query() {
        Some(query) => format!("{}/?{query}", uri.path()),
        None => format!("{}/", uri.path()),
    };
    Redirect::permanent(&target)
}

/// A request through a preview: forwarded to its sandbox's port as
/// [`proxy`] forwards, with the app's own `Authorization`, and the answer's
/// redirects and cookies kept under the preview's prefix.
async fn through_preview(
    State(state): State<AppState>,
    call: Call,
    request: Request,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let (secret, rest) = split_preview_path(parts.uri.path())
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such route"))?;
    let preview = state
        .manager
        .preview_by_secret(secret)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such preview"))?;
    call.preview(&preview.id, &preview.sandbox_id);
    call.summary(format!("port {} {rest}", preview.port));
    let prefix = format!("{PREVIEW_PATH_PREFIX}{secret}");
    let forwarded_path = format!(
        "/sandboxes/{}/ports/{}{rest}",
        preview.sandbox_id, preview.port
    );
    parts.uri = match parts.uri.query() {
        Some(query) => format!("{forwarded_path}?{query}"),
        None => forwarded_path,
    }
    .parse()
    .map_err(|_| ApiError::invalid("the request's path cannot be forwarded"))?;
    if let Ok(value) = HeaderValue::from_str(&prefix) {
        parts.headers.insert("x-forwarded-prefix", value);
    }
    let passing = Passing::Proxied {
        authorization: true,
    };
    let mut response = forward_parts(&state, &preview.sandbox_id, parts, body, passing).await?;
    keep_under_prefix(response.headers_mut(), &prefix, preview.port);
    Ok(response.into_response())
}

/// `/p/<secret>/REST` → (`<secret>`, `/REST`).
fn split_preview_path(path: &str) -> Option<(&str, &str)> {
    let after = path.strip_prefix(PREVIEW_PATH_PREFIX)?;
    let slash = after.find('/')?;
    Some((&after[..slash], &after[slash..]))
}

/// Rewrites an answer's `Location` and `Set-Cookie` paths so that they
/// stay under `prefix`: a redirect to `/login` goes to `<prefix>/login`
/// (as does one to the app's own `http://localhost:{port}/login`), and a
/// cookie for `Path=/` is one for `<prefix>/`.
fn keep_under_prefix(headers: &mut HeaderMap, prefix: &str, port: u16) {
    if let Some(location) = headers
        .get(header::LOCATION)
        .and_then(|value| value.to_str().ok())
    {
        let own_origins = [
            format!("http://localhost:{port}"),
            format!("http://127.0.0.1:{port}"),
        ];
        let path = own_origins
            .iter()
            .find_map(|origin| location.strip_prefix(origin.as_str()))
            .unwrap_or(location);
        if path.starts_with('/') && !path.starts_with("//") {
            if let Ok(value) = HeaderValue::from_str(&format!("{prefix}{path}")) {
                headers.insert(header::LOCATION, value);
            }
        }
    }
    let cookies: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|value| match value.to_str() {
            Ok(cookie) => {
                HeaderValue::from_str(&cookie_under_prefix(cookie, prefix)).unwrap_or(value.clone())
            }
            Err(_) => value.clone(),
        })
        .collect();
    if !cookies.is_empty() {
        headers.remove(header::SET_COOKIE);
        for cookie in cookies {
            headers.append(header::SET_COOKIE, cookie);
        }
    }
}

/// `Set-Cookie` with its `Path` under `prefix` (added when it had none,
/// since the default, the request's directory, may be the prefix's root);
/// a `Domain` is dropped, since the preview's host is not the app's.
fn cookie_under_prefix(cookie: &str, prefix: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut had_path = false;
    for (index, part) in cookie.split(';').enumerate() {
        let trimmed = part.trim();
        let name = trimmed
            .split('=')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if index > 0 && name == "path" {
            had_path = true;
            let path = trimmed.split_once('=').map_or("/", |(_, path)| path.trim());
            let path = if path.starts_with('/') { path } else { "/" };
            parts.push(format!("Path={prefix}{path}"));
        } else if index > 0 && name == "domain" {
            continue;
        } else {
            parts.push(trimmed.to_owned());
        }
    }
    if !had_path {
        parts.push(format!("Path={prefix}/"));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_at_the_port_and_the_preview() {
        assert_eq!(path_after_port("/sandboxes/ab/ports/8000/"), "/");
        assert_eq!(path_after_port("/sandboxes/ab/ports/8000/a/b"), "/a/b");
        assert_eq!(
            split_preview_path("/p/sbxp_00/static/app.js"),
            Some(("sbxp_00", "/static/app.js"))
        );
        assert_eq!(split_preview_path("/p/sbxp_00/"), Some(("sbxp_00", "/")));
        assert_eq!(split_preview_path("/p/sbxp_00"), None);
    }

    #[test]
    fn redirects_and_cookies_stay_under_the_prefix() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::LOCATION,
            HeaderValue::from_static("/login?next=%2F"),
        );
        headers.append(
            header::SET_COOKIE,
            HeaderValue::from_static("session=abc; Path=/; HttpOnly; Domain=localhost"),
        );
        headers.append(header::SET_COOKIE, HeaderValue::from_static("theme=dark"));
        keep_under_prefix(&mut headers, "/p/s", 8000);
        assert_eq!(headers[header::LOCATION], "/p/s/login?next=%2F");
        let cookies: Vec<&str> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|value| value.to_str().expect("ascii"))
            .collect();
        assert_eq!(
            cookies,
            [
                "session=abc; Path=/p/s/; HttpOnly",
                "theme=dark; Path=/p/s/"
            ]
        );

        for (location, expected) in [
            ("http://localhost:8000/done", "/p/s/done"),
            ("https://example.com/x", "https://example.com/x"),
            ("//evil.test/x", "//evil.test/x"),
            ("relative/page", "relative/page"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::LOCATION, HeaderValue::from_static(location));
            keep_under_prefix(&mut headers, "/p/s", 8000);
            assert_eq!(headers[header::LOCATION], expected, "{location}");
        }
    }
}
