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
//!
//! With `sbx serve --preview-domain D` a preview is also its own origin,
//! `http://{port}-{id}.D/`, which lifts that limit and keeps one
//! preview's scripts from another's cookies. A host name is not secret
//! (it goes through DNS), so the secret rides in the first URL's query
//! (`?sbx_preview_token=`), is traded at once for an `HttpOnly` cookie of
//! that host alone, and the browser is sent to the same URL without it.
//! Such a request is rewritten, before routing and auditing, into the
//! `/p/<secret>/…` form ([`route_host_preview`]) with a [`HostPreview`]
//! mark, so that both forms share one path through the audit trail and
//! the proxy; the mark makes the answer's paths stay as they are and
//! holds the preview to the host's sandbox and port.

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
    PREVIEW_COOKIE, PREVIEW_PATH_PREFIX, PREVIEW_TOKEN_PARAM,
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
    preview.url = Some(match state.preview_domain.as_deref() {
        Some(domain) => {
            let port = host.rsplit_once(':').map_or("", |(_, port)| port);
            let port = if port.is_empty() {
                String::new()
            } else {
                format!(":{port}")
            };
            format!(
                "http://{}-{id}.{domain}{port}/?{PREVIEW_TOKEN_PARAM}={secret}",
                preview.port
            )
        }
        None => format!("http://{host}{PREVIEW_PATH_PREFIX}{secret}/"),
    });
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
    let host_preview = parts.extensions.remove::<HostPreview>();
    if let Some(host) = &host_preview {
        // One sandbox's secret opens nothing on another's host.
        if host.sandbox_id != preview.sandbox_id || host.port != preview.port {
            return Err(ApiError::new(ErrorCode::NotFound, "no such preview"));
        }
    }
    call.preview(&preview.id, &preview.sandbox_id);
    call.summary(format!("port {} {rest}", preview.port));
    if let Some(HostPreview {
        from_query: true, ..
    }) = host_preview
    {
        return Ok(trade_for_cookie(
            &parts.uri,
            rest,
            secret,
            preview.expires_at,
        ));
    }
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
    match host_preview {
        Some(_) => location_under_prefix(response.headers_mut(), "", preview.port),
        None => keep_under_prefix(response.headers_mut(), &prefix, preview.port),
    }
    Ok(response.into_response())
}

/// A host preview's request, rewritten into the `/p/<secret>/…` form by
/// [`route_host_preview`]: the sandbox and port its host names, and
/// whether the secret came in the query (a first visit) or a cookie.
#[derive(Debug, Clone)]
pub struct HostPreview {
    sandbox_id: String,
    port: u16,
    from_query: bool,
}

/// A request to `{port}-{id}.{domain}` becomes one to
/// `/p/<secret>{path}`, its secret taken from the query or the cookie and
/// removed from both, so that neither the app nor the audit trail sees
/// it. Without a secret the path is `/p/-{path}`, no preview's: 404.
/// Requests to any other host are left alone.
pub fn route_host_preview(domain: &str, request: &mut Request) {
    let Some((sandbox_id, port)) = request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .and_then(|host| preview_host(host, domain))
    else {
        return;
    };
    let (query, from_query) = take_query_secret(request.uri().query());
    let secret = from_query
        .clone()
        .or_else(|| take_cookie_secret(request.headers_mut()));
    let path = format!(
        "{PREVIEW_PATH_PREFIX}{}{}{}",
        secret.as_deref().unwrap_or("-"),
        request.uri().path(),
        query.map(|query| format!("?{query}")).unwrap_or_default()
    );
    match path.parse::<Uri>() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => *request.uri_mut() = Uri::from_static("/p/-/"),
    }
    request.extensions_mut().insert(HostPreview {
        sandbox_id,
        port,
        from_query: from_query.is_some(),
    });
}

/// `{port}-{id}.{domain}[:p]` → (id, port).
fn preview_host(host: &str, domain: &str) -> Option<(String, u16)> {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.to_ascii_lowercase();
    let label = name.strip_suffix(domain)?.strip_suffix('.')?;
    let (port, id) = label.split_once('-')?;
    let port = port.parse().ok().filter(|port| *port != 0)?;
    let plausible = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric());
    plausible.then(|| (id.to_owned(), port))
}

/// The query without the preview's token, and the token.
fn take_query_secret(query: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(query) = query else {
        return (None, None);
    };
    let mut secret = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix(PREVIEW_TOKEN_PARAM) {
            Some(value) if value.starts_with('=') => {
                secret = Some(value[1..].to_owned());
                false
            }
            _ => true,
        })
        .collect();
    let rest = (!rest.is_empty()).then(|| rest.join("&"));
    (rest, secret)
}

/// The preview's cookie, taken out of the `Cookie` headers.
fn take_cookie_secret(headers: &mut HeaderMap) -> Option<String> {
    let mut secret = None;
    let kept: Vec<HeaderValue> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| {
            let Ok(cookies) = value.to_str() else {
                return Some(value.clone());
            };
            let others: Vec<&str> = cookies
                .split(';')
                .map(str::trim)
                .filter(|cookie| match cookie.split_once('=') {
                    Some((name, value)) if name == PREVIEW_COOKIE => {
                        secret = Some(value.to_owned());
                        false
                    }
                    _ => true,
                })
                .collect();
            (!others.is_empty()).then(|| HeaderValue::from_str(&others.join("; ")).ok())?
        })
        .collect();
    headers.remove(header::COOKIE);
    for value in kept {
        headers.append(header::COOKIE, value);
    }
    secret
}

/// A first visit's answer: the secret as a cookie of this host alone,
/// until the preview expires, and the same URL again without it.
fn trade_for_cookie(
    uri: &Uri,
    rest: &str,
    secret: &str,
    expires_at: chrono::DateTime<chrono::Utc>,
) -> Response {
    let location = match uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_owned(),
    };
    let max_age = (expires_at - chrono::Utc::now()).num_seconds().max(0);
    let cookie =
        format!("{PREVIEW_COOKIE}={secret}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax");
    let mut response = Redirect::to(&location).into_response();
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
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
    location_under_prefix(headers, prefix, port);
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

/// A redirect to an absolute path, or to the app's own origin, under
/// `prefix` (`""` for a host preview, whose paths are the app's own).
fn location_under_prefix(headers: &mut HeaderMap, prefix: &str, port: u16) {
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

    #[test]
    fn preview_hosts_name_a_port_and_a_sandbox_under_the_domain() {
        let domain = "preview.test";
        assert_eq!(
            preview_host("8000-ab12.preview.test:7070", domain),
            Some(("ab12".to_owned(), 8000))
        );
        assert_eq!(
            preview_host("8000-AB12.Preview.Test", domain),
            Some(("ab12".to_owned(), 8000))
        );
        for host in [
            "preview.test",
            "127.0.0.1:7070",
            "8000-ab12.other.test",
            "8000-ab12.evilpreview.test",
            "0-ab12.preview.test",
            "x-ab12.preview.test",
            "8000-.preview.test",
            "8000-a.b.preview.test",
        ] {
            assert_eq!(preview_host(host, domain), None, "{host}");
        }
    }

    #[test]
    fn a_host_previews_secret_leaves_the_query_and_the_cookies() {
        assert_eq!(
            take_query_secret(Some("a=1&sbx_preview_token=s3&b=2")),
            (Some("a=1&b=2".to_owned()), Some("s3".to_owned()))
        );
        assert_eq!(
            take_query_secret(Some("sbx_preview_token=s3")),
            (None, Some("s3".to_owned()))
        );
        assert_eq!(
            take_query_secret(Some("sbx_preview_tokens=x")),
            (Some("sbx_preview_tokens=x".to_owned()), None)
        );
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; sbx_preview=s4; lang=en"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("sbx_preview=s4"));
        assert_eq!(take_cookie_secret(&mut headers).as_deref(), Some("s4"));
        let left: Vec<_> = headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(left, ["theme=dark; lang=en"]);
    }

    #[test]
    fn host_preview_requests_become_preview_paths() {
        let mut request = Request::builder()
            .uri("/app/page?x=1&sbx_preview_token=s5")
            .header(header::HOST, "8000-ab12.preview.test:7070")
            .body(axum::body::Body::empty())
            .expect("request");
        route_host_preview("preview.test", &mut request);
        assert_eq!(request.uri(), "/p/s5/app/page?x=1");
        let mark = request.extensions().get::<HostPreview>().expect("marked");
        assert!(mark.from_query && mark.port == 8000 && mark.sandbox_id == "ab12");

        let mut request = Request::builder()
            .uri("/v1/sandboxes")
            .header(header::HOST, "8000-ab12.preview.test")
            .body(axum::body::Body::empty())
            .expect("request");
        route_host_preview("preview.test", &mut request);
        assert_eq!(
            request.uri(),
            "/p/-/v1/sandboxes",
            "no API on a preview's host"
        );

        let mut request = Request::builder()
            .uri("/v1/sandboxes")
            .header(header::HOST, "127.0.0.1:7070")
            .body(axum::body::Body::empty())
            .expect("request");
        route_host_preview("preview.test", &mut request);
        assert_eq!(request.uri(), "/v1/sandboxes");
        assert!(request.extensions().get::<HostPreview>().is_none());
    }
}
