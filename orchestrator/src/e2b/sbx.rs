//! Calling the REST API in process, as the E2B caller.
//!
//! Each request carries the caller's token as its bearer and a
//! [`ViaTool`] naming the E2B call, and passes the same `/v1` router, auth
//! and audit layers as any client's. Answers from inside a sandbox are
//! hostile: they are streamed on, or read up to a bound.

use super::error::E2bError;
use crate::http::ViaTool;
use axum::body::{Body, Bytes};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderValue, Method, Request};
use axum::response::Response;
use axum::Router;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use sbx_api::{ErrorBody, ErrorCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tower::ServiceExt;

/// Largest JSON answer read whole (a listing of a big directory fits).
const MAX_JSON_BYTES: usize = 16 * 1024 * 1024;
/// Longest NDJSON line read (the agent sends output in far smaller
/// chunks).
const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;
/// Largest error body read.
const MAX_ERROR_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Sbx {
    api: Router,
    authorization: HeaderValue,
    call: &'static str,
    /// For envd calls, the sandbox they are for: a refused token is then
    /// that sandbox gone (see [`E2bError::Gone`]).
    sandbox: Option<String>,
}

impl Sbx {
    /// `token` is whatever the caller sent; a missing or malformed one
    /// still reaches the API, whose 401 is then recorded like any other.
    pub fn new(api: Router, token: &str, call: &'static str) -> Self {
        let authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer -"));
        Self {
            api,
            authorization,
            call,
            sandbox: None,
        }
    }

    /// Calls for envd on `sandbox`.
    pub fn for_sandbox(mut self, sandbox: &str) -> Self {
        self.sandbox = Some(sandbox.to_string());
        self
    }

    /// One request; its answer whatever the status.
    pub async fn raw(
        &self,
        method: Method,
        uri: &str,
        body: Body,
        content_type: Option<&'static str>,
    ) -> Result<Response, E2bError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(AUTHORIZATION, self.authorization.clone());
        if let Some(content_type) = content_type {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        let mut request = builder.body(body).map_err(|err| {
            E2bError::internal(format!("cannot build a request for {uri}: {err}"))
        })?;
        request.extensions_mut().insert(ViaTool::e2b(self.call));
        match self.api.clone().oneshot(request).await {
            Ok(response) => Ok(response),
            Err(never) => match never {},
        }
    }

    /// One request; a non-2xx answer is the API's error.
    pub async fn send(
        &self,
        method: Method,
        uri: &str,
        body: Body,
        content_type: Option<&'static str>,
    ) -> Result<Response, E2bError> {
        let response = self.raw(method, uri, body, content_type).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let error = error_body(response).await;
        match &self.sandbox {
            Some(sandbox) if error.error_code == ErrorCode::Unauthorized => {
                Err(E2bError::Gone(sandbox.clone()))
            }
            _ => Err(E2bError::Api(error)),
        }
    }

    /// A JSON request (or none) and its JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, E2bError> {
        let response = self.send_json(method, uri, body).await?;
        let bytes = read_bounded(response.into_body(), MAX_JSON_BYTES).await?;
        serde_json::from_slice(&bytes)
            .map_err(|err| E2bError::internal(format!("unexpected answer from {uri}: {err}")))
    }

    /// A JSON request (or none) whose answer has nothing to read.
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<&impl Serialize>,
    ) -> Result<(), E2bError> {
        self.send_json(method, uri, body).await.map(drop)
    }

    async fn send_json(
        &self,
        method: Method,
        uri: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Response, E2bError> {
        match body {
            Some(body) => {
                let bytes = serde_json::to_vec(body)
                    .map_err(|err| E2bError::internal(format!("cannot encode a request: {err}")))?;
                self.send(method, uri, Body::from(bytes), Some("application/json"))
                    .await
            }
            None => self.send(method, uri, Body::empty(), None).await,
        }
    }
}

/// No body to send with [`Sbx::json`] or [`Sbx::call`].
pub const NO_BODY: Option<&()> = None;

/// Reads at most `max_bytes` of `body`.
pub async fn read_bounded(body: Body, max_bytes: usize) -> Result<Bytes, E2bError> {
    match http_body_util::Limited::new(body, max_bytes)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            Err(E2bError::Api(ErrorBody::new(
                ErrorCode::PayloadTooLarge,
                format!("larger than {max_bytes} bytes"),
            )))
        }
        Err(err) => Err(E2bError::internal(format!("cannot read an answer: {err}"))),
    }
}

/// The API's error body (every `/v1` error has one).
async fn error_body(response: Response) -> ErrorBody {
    let status = response.status();
    let bytes = read_bounded(response.into_body(), MAX_ERROR_BYTES)
        .await
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        ErrorBody::new(
            ErrorCode::Internal,
            format!("the API answered {status} without an error body"),
        )
    })
}

/// A query string's value, percent-encoded.
pub fn encode(value: &str) -> String {
    serde_urlencoded::to_string([("", value)])
        .map(|pair| pair[1..].to_string())
        .unwrap_or_default()
}

/// The values of an NDJSON body (a process's logs, a watch), a line at a
/// time, each line bounded.
pub fn ndjson<T: DeserializeOwned + Send + 'static>(
    body: Body,
) -> impl futures_util::Stream<Item = Result<T, E2bError>> + Unpin + Send {
    let state = (body.into_data_stream(), Vec::<u8>::new(), false);
    Box::pin(futures_util::stream::unfold(
        state,
        |(mut chunks, mut pending, mut done)| async move {
            loop {
                if let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let event = serde_json::from_slice::<T>(&line).map_err(|err| {
                        E2bError::internal(format!("a malformed NDJSON line: {err}"))
                    });
                    return Some((event, (chunks, pending, done)));
                }
                if done {
                    return None;
                }
                match chunks.next().await {
                    Some(Ok(chunk)) => {
                        pending.extend_from_slice(&chunk);
                        if pending.len() > MAX_LINE_BYTES {
                            let error = E2bError::internal("an NDJSON line too long");
                            return Some((Err(error), (chunks, Vec::new(), true)));
                        }
                    }
                    Some(Err(err)) => {
                        let error = E2bError::Unavailable(format!("the stream broke off: {err}"));
                        return Some((Err(error), (chunks, Vec::new(), true)));
                    }
                    None => done = true,
                }
            }
        },
    ))
}
