//! Calling the REST API in process, as the caller, for one tool.
//!
//! A request goes through the same `/v1` router `sbx serve` serves, with
//! the caller's `Authorization` header and a [`ViaTool`] extension naming
//! the tool, and comes back as the response a client would get. Bodies
//! from inside a sandbox (files, command output) are hostile: they are read
//! as streams or up to a bound, never whole on trust.

use super::tools::ToolError;
use axum::body::{Body, Bytes};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use axum::http::{HeaderValue, Method, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use http_body_util::BodyExt;
use sbx_api::{ErrorBody, ErrorCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tower::ServiceExt;

use crate::http::ViaTool;

/// Largest error body read; the API's are far smaller.
const MAX_ERROR_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Rest {
    api: Router,
    authorization: HeaderValue,
    host: Option<HeaderValue>,
    tool: &'static str,
}

impl Rest {
    pub fn new(api: Router, authorization: HeaderValue, tool: &'static str) -> Self {
        Self {
            api,
            authorization,
            host: None,
            tool,
        }
    }

    /// Requests carry the caller's `Host`, so that URLs the API makes for
    /// them (a preview's) point where they reached this server.
    pub fn with_host(mut self, host: Option<HeaderValue>) -> Self {
        self.host = host;
        self
    }

    fn request(&self, method: Method, uri: &str) -> axum::http::request::Builder {
        let builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(AUTHORIZATION, self.authorization.clone());
        match &self.host {
            Some(host) => builder.header(HOST, host.clone()),
            None => builder,
        }
    }

    /// Sends one request; a non-2xx answer is the API's error.
    pub async fn send(
        &self,
        method: Method,
        uri: &str,
        body: Option<Body>,
        json: bool,
    ) -> Result<Response, ToolError> {
        let mut builder = self.request(method, uri);
        if json {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let mut request = builder
            .body(body.unwrap_or_else(Body::empty))
            .map_err(|err| {
                ToolError::Invalid(format!("cannot build a request for {uri}: {err}"))
            })?;
        request.extensions_mut().insert(ViaTool::mcp(self.tool));
        let response = match self.api.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(ToolError::Api(error_body(response).await))
        }
    }

    /// A JSON request and its JSON answer, read up to `max_bytes`.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<&impl Serialize>,
        max_bytes: usize,
    ) -> Result<T, ToolError> {
        let body = body
            .map(|body| serde_json::to_vec(body).map(Body::from))
            .transpose()
            .map_err(|err| ToolError::Internal(format!("cannot encode a request: {err}")))?;
        let response = self.send(method, uri, body, true).await?;
        let bytes = read_bounded(response.into_body(), max_bytes).await?;
        serde_json::from_slice(&bytes)
            .map_err(|err| ToolError::Internal(format!("unexpected answer from {uri}: {err}")))
    }

    /// A request whose answer, whatever its status, is the caller's to
    /// read: a server's in the sandbox, through the port proxy.
    pub async fn raw(
        &self,
        method: Method,
        uri: &str,
        body: Option<Body>,
        content_type: Option<&str>,
    ) -> Result<Response, ToolError> {
        let mut builder = self.request(method, uri);
        if let Some(content_type) = content_type {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        let mut request = builder
            .body(body.unwrap_or_else(Body::empty))
            .map_err(|err| {
                ToolError::Invalid(format!("cannot build a request for {uri}: {err}"))
            })?;
        request.extensions_mut().insert(ViaTool::mcp(self.tool));
        match self.api.clone().oneshot(request).await {
            Ok(response) => Ok(response),
            Err(never) => match never {},
        }
    }

    /// A request whose answer has no body worth reading (204).
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<Body>,
        json: bool,
    ) -> Result<(), ToolError> {
        self.send(method, uri, body, json).await.map(drop)
    }
}

/// Reads at most `max_bytes` of `body`; more is an error that says so.
pub async fn read_bounded(body: Body, max_bytes: usize) -> Result<Bytes, ToolError> {
    let limited = http_body_util::Limited::new(body, max_bytes);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(ToolError::TooLarge(
            format!("the answer is larger than {max_bytes} bytes"),
        )),
        Err(err) => Err(ToolError::Internal(format!("cannot read an answer: {err}"))),
    }
}

/// The API's error body, or one made from the status if there is none.
async fn error_body(response: Response) -> ErrorBody {
    let status = response.status();
    let bytes = read_bounded(response.into_body(), MAX_ERROR_BYTES)
        .await
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        ErrorBody::new(
            code_of(status),
            String::from_utf8_lossy(&bytes[..bytes.len().min(1024)]).into_owned(),
        )
    })
}

fn code_of(status: StatusCode) -> ErrorCode {
    match status.as_u16() {
        400 => ErrorCode::InvalidRequest,
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        409 => ErrorCode::Conflict,
        413 => ErrorCode::PayloadTooLarge,
        503 => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}
